"""Server side: the fedsys ServerApp and the glue that starts a SuperLink."""
