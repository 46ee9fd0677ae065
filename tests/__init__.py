"""jwtwatch's tests, grouped like pipeline/: one package per pipeline package, system/ for the whole loop,
support/ for what they share. Tests of pipeline's top-level modules (events, archive, files, cli, _accel) sit here."""
