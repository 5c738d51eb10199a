"""The Gradio app around the ``ambient`` library: pairs (loading), handlers (plain functions), ui (layout)."""
