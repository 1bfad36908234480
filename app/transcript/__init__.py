"""The transcript widget: the list view, the delegate that paints each message, the canvas animation
and markdown rendering."""
