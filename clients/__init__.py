"""Data-holder side: the fedsys ClientApp and the glue that starts a SuperNode."""
