"""wanport_toy: an example backend plugin (see examples/toy-backend/README.md)."""
