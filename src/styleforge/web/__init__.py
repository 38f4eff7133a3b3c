"""``styleforge serve``: a local web page over the five methods and the comparison.

``handlers`` holds the plain functions behind the page (no gradio import: they take paths, images and values and
return results or raise :class:`~styleforge.errors.StyleforgeError`); ``app`` lays out the Gradio page on them.
Every run goes through :mod:`styleforge.options`, so the page parses, validates and writes exactly what the
command line does.
"""
