"""The indirect-object (IOI) toy: its language, training recipe and measurements."""
