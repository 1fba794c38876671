"""Built-in benchmark builders: each writes a real dataset in bindspace's manifest format, offline.

``spoken_digits``: handwritten digits (scikit-learn), their names spoken by eSpeak NG, captions. A data
source (``bindspace.data``) reads what a builder wrote like any user's manifests.
"""
