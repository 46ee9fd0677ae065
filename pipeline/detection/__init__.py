"""The detection engine and what feeds it: the bus (streaming) and files (replay) share one code path."""
