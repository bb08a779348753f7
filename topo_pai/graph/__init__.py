"""Graph building: the torch.fx bridge (``trace``), the op program (``ir``), the
model's prunable layers (``modules``), window geometry (``windows``) and
the channel-level structure maps that become CSR blocks (``structure``)."""
