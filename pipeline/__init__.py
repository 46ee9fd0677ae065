"""jwtwatch: catch stolen and abused JWT access tokens, and stop them within seconds."""

from pipeline import _accel

# Before any submodule is imported: a compiled hot-path module is used only if built from its current source.
_accel.install()
