"""Reading finished runs: the run table, sweeps, validity of a protocol, the Atari aggregates, figures. It may import
the science and the run machinery."""
