"""The OS layer: names, the compiled core, segments, waits, discovery and cleanup, fault points.

Nothing here knows what a channel or a shared array is; the layers above import from here,
never the reverse.
"""
