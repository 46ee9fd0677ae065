"""jwtwatch: catch stolen and abused JWT access tokens, and stop them within seconds."""
