"""Resources that ship with Canvas Chat: the demo model, model configs, icons."""
