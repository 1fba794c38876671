"""Neural building blocks shared by every modality: transformer layers, heads, pretrained timm and
transformers trunks. A leaf package: it imports nothing else of bindspace, so the modality registry
(``bindspace.modalities``) builds its preprocessors from it and the model (``bindspace.models``) sits
above both."""
