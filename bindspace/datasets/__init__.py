"""Built-in benchmark builders: each writes a real dataset in bindspace's manifest format, offline.

``spoken_digits``: handwritten digits (scikit-learn), their names spoken by eSpeak NG, captions.
``spoken_letters``: glyphs of a-z in matplotlib's fonts, their names spoken by eSpeak NG, pen traces of
the glyphs as IMU windows, captions.

A data source (``bindspace.data``) reads what a builder wrote like any user's manifests.
"""
