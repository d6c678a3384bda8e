"""specbuilder on the wire, without torch: what the core, the server and the client all import.

- ``v1``: the protobuf code generated from ``protos/specbuilder/v1/`` (``make proto``).
- ``arrays``: numpy arrays to and from ``Tensor`` messages; the one table of wire dtypes.
- ``message_bytes``: a tensor's elements into and out of serialized messages, uncopied.
- ``values``: Python values to and from ``Value`` messages: one value, a spec message's JSON
  form, a training configuration's flat map.
- ``results``: what specbuilder reports (``LayerStats``, ``Histogram``, ``EpochMetrics``,
  ``Problem``, run statuses) and each one's protobuf form.
- ``regions``: shared-memory regions: their names, making one, reading them kept mapped.
- ``localsocket``: the frames of the same-host Unix socket.
- ``heap``: glibc malloc thresholds for processes that move multi-megabyte messages.
"""
