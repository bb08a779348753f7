"""Graph building: the torch.fx bridge (``trace``), the op program (``ir``), the
model's prunable layers (``modules``), window geometry (``windows``), what fx does
not record (``mutation``: in-place changes, hooks) and
the channel-level structure maps that become CSR blocks (``structure``)."""
