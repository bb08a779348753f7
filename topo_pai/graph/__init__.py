"""Graph building: the torch.fx bridge (``trace``), the op program (``ir``) and
the channel-level structure maps that become CSR blocks (``structure``)."""
