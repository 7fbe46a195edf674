"""The in-guest test module runs only inside the Debian guest, never on the host."""

collect_ignore = ["inguest"]
