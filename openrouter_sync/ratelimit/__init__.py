"""The pieces of the rate controller behind :class:`openrouter_sync.throttle.Throttle`.

- :mod:`.estimator`: pure functions, send times and outcomes in, the server's rate out;
- :mod:`.gate`: holds requests back until a time, with one early probe;
- :mod:`.pacer`: send slots one interval apart;
- :mod:`.lane`: the controller for one scope, joining the three (how it reacts to each kind of
  server is told there);
- :mod:`.shared`: the state file that processes on one machine may share.
"""
