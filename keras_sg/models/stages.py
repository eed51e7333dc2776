"""Splitting a network into stages at its interfaces."""

import keras

from keras_sg.layers.interface import Interface


def split_stages(network) -> list:
    """Cuts a network into stages at its `Interface` layers.

    Each stage but the last ends with the interface that closes it, so the
    interface's name travels with the stage. Layers are shared, not copied:
    the stages hold the very weights of `network`.

    Args:
        network: a `keras.Sequential` or functional `keras.Model` holding
            `Interface` layers, or a list of stages (Keras layers or models),
            returned as a new list.

    Returns:
        The list of stages, lowest first.

    Example:

    ```python
    stages = keras_sg.split_stages(net)  # len(stages) == interfaces + 1
    ```
    """
    if isinstance(network, (list, tuple)):
        stages = list(network)
        for i, stage in enumerate(stages):
            if not isinstance(stage, keras.layers.Layer):
                raise TypeError(
                    "Each stage must be a Keras layer or model. Received: "
                    f"stage {i} of type {type(stage).__name__}"
                )
        if not stages:
            raise ValueError("Expected at least one stage. Received an empty list.")
        return stages
    if isinstance(network, keras.Sequential):
        return _split_sequential(network)
    if isinstance(network, keras.Model) and hasattr(network, "_operations"):
        return _split_functional(network)
    if isinstance(network, keras.layers.Layer):
        return [network]
    raise TypeError(
        "Expected a keras.Sequential, a functional keras.Model or a list of "
        f"stages. Received: network of type {type(network).__name__}"
    )


def place_stage(stage, device: str):
    """A copy of `stage` whose variables live on `device`, weights included.

    Variables cannot move between devices once made, so a stage built
    elsewhere is rebuilt from its config inside `tf.device(device)`. An unbuilt
    stage is returned as it is: it will be built under that scope.
    """
    import tensorflow as tf

    if not stage.built:
        return stage
    with tf.device(device):
        if isinstance(stage, keras.Model):
            copy = keras.models.clone_model(stage)
        else:
            copy = stage.__class__.from_config(stage.get_config())
            copy.build_from_config(stage.get_build_config())
    copy.set_weights(stage.get_weights())
    return copy


def place_optimizer(optimizer):
    """Makes `optimizer` keep each variable's slots and update on its device.

    Keras asks TensorFlow to colocate a slot (Adam's moments, a momentum) and
    the update math with its variable, but the slots are built eagerly, where
    colocation does nothing, and the math lands on the default device too: each
    step would then ship every gradient and moment there and back (from a
    remote worker, over the network). Wrapping the methods that make slots,
    update a variable and all-reduce gradients puts each under
    `tf.device(<the variable's device>)`, however the optimizer is built (by
    `fit`, or by `load_model` before it restores the slots). The wrappers are
    plain attributes of the instance: they are not saved, and a placed
    `DecoupledModel` adds them whenever it is given an optimizer.
    """
    import tensorflow as tf

    if getattr(optimizer, "_keras_sg_placed", False):
        return optimizer

    def device_of(variable):
        if isinstance(variable, keras.Variable):  # Keras wraps a tf.Variable
            variable = variable.value
        return getattr(variable, "device", None) or None

    make_slot = optimizer.add_variable_from_reference
    update = optimizer.update_step

    def add_variable_from_reference(reference_variable, *args, **kwargs):
        with tf.device(device_of(reference_variable)):
            return make_slot(reference_variable, *args, **kwargs)

    def update_step(gradient, variable, *args, **kwargs):
        with tf.device(device_of(variable)):
            return update(gradient, variable, *args, **kwargs)

    optimizer.add_variable_from_reference = add_variable_from_reference
    optimizer.update_step = update_step
    # Keras's TensorFlow optimizer also all-reduces the gradients first: the
    # identity for one replica, but one op over all of them, on the default
    # device. Reduce each gradient on its own variable's device instead.
    reduce = getattr(optimizer, "_all_reduce_sum_gradients", None)
    if reduce is not None:

        def all_reduce_sum_gradients(grads_and_vars):
            reduced = []
            for gradient, variable in grads_and_vars:
                with tf.device(device_of(variable)):
                    reduced.extend(reduce([(gradient, variable)]))
            return reduced

        optimizer._all_reduce_sum_gradients = all_reduce_sum_gradients
    optimizer._keras_sg_placed = True
    return optimizer


def place_metric(metric, device: str) -> bool:
    """Puts the variables of `metric` on `device`, keeping their values.

    A metric's variables are made where the metric is (the default device:
    for a model placed on TensorFlow servers, the client's). A stage's loop
    that updates a metric on another device then waits for that device at
    every step. The metric object stays the one Keras and the user hold;
    only the TensorFlow variables behind its Keras variables are remade
    under `tf.device(device)` (a `tf.Variable` cannot move).

    Returns whether any variable moved: functions traced before (Keras's
    `test_function`) still hold the old ones and must be traced again.
    """
    import tensorflow as tf

    moved = False
    for variable in metric.variables:
        current = variable.value
        if not isinstance(current, tf.Variable):
            raise TypeError(
                "place_metric needs the TensorFlow backend's Keras variables, "
                f"which wrap a tf.Variable. Received: {variable.path} holding "
                f"{type(current).__name__}"
            )
        here = tf.DeviceSpec.from_string(current.device)
        if here.make_merged_spec(tf.DeviceSpec.from_string(device)) == here:
            continue
        with tf.init_scope(), tf.device(device):
            variable._value = tf.Variable(
                current.read_value(),
                trainable=current.trainable,
                name=current.name.split(":")[0],
            )
        moved = True
    return moved


def _split_sequential(network: keras.Sequential) -> list:
    groups, current = [], []
    for layer in network.layers:
        current.append(layer)
        if isinstance(layer, Interface):
            groups.append(current)
            current = []
    groups.append(current)
    for i, group in enumerate(groups):
        if not [layer for layer in group if not isinstance(layer, Interface)]:
            interface = group[-1] if group else groups[i - 1][-1]
            raise ValueError(
                f"Interface '{interface.name}' of '{network.name}' leaves stage "
                f"{i} without a layer: an interface must sit between two layers."
            )
    input_shape = _sequential_input_shape(network)
    stages = []
    for i, group in enumerate(groups):
        stage = keras.Sequential(group, name=f"{network.name}_stage_{i}")
        if input_shape is not None:
            stage.build(input_shape)
            input_shape = stage.compute_output_shape(input_shape)
        stages.append(stage)
    return stages


def _sequential_input_shape(network):
    try:
        return tuple(network.inputs[0].shape)
    except (AttributeError, ValueError, IndexError, TypeError):
        return None


def _split_functional(network: keras.Model) -> list:
    interfaces = [layer for layer in network.layers if isinstance(layer, Interface)]
    stages = []
    inputs = network.inputs
    if len(inputs) == 1:
        inputs = inputs[0]
    ends = {id(t) for t in network.outputs}
    for interface in interfaces:
        if id(_output_of(interface)) in ends:
            raise ValueError(
                f"Interface '{interface.name}' is the last layer of "
                f"'{network.name}', which leaves the last stage without a layer: "
                "an interface must sit between two layers. Received: an "
                f"Interface as an output of '{network.name}'"
            )
    for i, interface in enumerate(interfaces + [None]):
        outputs = network.outputs if interface is None else _output_of(interface)
        if isinstance(outputs, list) and len(outputs) == 1:
            outputs = outputs[0]
        try:
            stage = keras.Model(inputs, outputs, name=f"{network.name}_stage_{i}")
        except ValueError as error:
            raise ValueError(
                f"Cannot cut '{network.name}' at interface "
                f"'{interfaces[i - 1].name if i else interface.name}': every "
                "interface must split the graph in two, with no connection "
                f"that skips across it. Keras said: {error}"
            ) from error
        _check_has_layers(stage, i, interfaces, network.name)
        stages.append(stage)
        inputs = outputs
    return stages


def _check_has_layers(stage, i, interfaces, network_name):
    """An interface first, last or right after another leaves an empty stage."""
    if any(
        not isinstance(x, (Interface, keras.layers.InputLayer)) for x in stage.layers
    ):
        return
    where = (
        f"Interface '{interfaces[i].name}' is the first layer"
        if i == 0
        else f"Interface '{interfaces[i - 1].name}' is the last layer"
        if i == len(interfaces)
        else f"Interfaces '{interfaces[i - 1].name}' and '{interfaces[i].name}' "
        "follow each other"
    )
    raise ValueError(
        f"{where} in '{network_name}', which leaves stage {i} without a layer "
        "(an identity stage, nothing to train): an interface must sit between "
        f"two layers. Received: stage {i} holding only "
        f"{[x.name for x in stage.layers if isinstance(x, Interface)]}"
    )


def _output_of(interface: Interface):
    try:
        return interface.output
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"Interface '{interface.name}' must be called exactly once in the "
            f"network. Keras said: {error}"
        ) from error
