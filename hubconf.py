"""paddle.hub entry points: one per registered CvT variant.

    model = paddle.hub.load('path/to/this/repo', 'cvt_13_224x224', source='local', pretrained=True)

`pretrained=True` loads the variant's released weights (its tag, downloaded once into the cache);
a path, URL or tag string loads that instead; `False` (the default) leaves the weights initialised.
Other keywords (num_classes, drop_path_rate, ...) go to the model, as with models.create_model;
`features_only=True` (with `out_indices`) gives the backbone, whose forward returns the stage maps:

    backbone = paddle.hub.load('path/to/this/repo', 'cvt_13_224x224', source='local', pretrained=True,
                               features_only=True)
"""
from models import create_model, list_models  # paddle.hub puts this folder on sys.path while it loads

dependencies = ['paddle', 'numpy']


def _entry(name: str):
    def load(pretrained=False, **kwargs):
        source = name if pretrained is True else (pretrained or None)
        return create_model(name, pretrained=source, **kwargs)
    load.__name__ = name
    load.__doc__ = f'{name} (see models/cvt.py); pretrained: True for its released weights, or a path/URL/tag.'
    return load


for _name in list_models():
    globals()[_name] = _entry(_name)
