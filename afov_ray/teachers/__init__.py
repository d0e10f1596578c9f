"""afov_ray.teachers: everything about the 2D open-vocabulary teachers.

The class dictionary (``dictionary``: texts -> categories -> classes), the teacher-output schema and run
records (``schema``), the backends that label camera images (``backends``: simulated, MaskCLIP, ...), the
built-in MaskCLIP model and CLIP tokenizer (``maskclip``, ``clip_model``, ``clip_tokenizer``), the simulated
teacher of generated data (``simulated``) and the importers of official SAN / CAT-Seg / FC-CLIP files
(``official``)."""


from afov_ray.teachers.dictionary import Category, ClassDictionary, vocabulary_hash
from afov_ray.teachers.official import import_official_image, import_text_embedding, import_text_table
from afov_ray.teachers.schema import (
    DEFAULT_FEATURE_DIM,
    TeacherImage,
    TeacherRun,
    TextEmbeddingTable,
    from_row,
    from_table,
    image_schema,
    images_table,
    read_run,
    read_scene_shard,
    superpixel_feature_table,
    to_table,
    write_run,
)

__all__ = [
    "DEFAULT_FEATURE_DIM",
    "Category",
    "ClassDictionary",
    "TeacherImage",
    "TeacherRun",
    "TextEmbeddingTable",
    "from_row",
    "from_table",
    "image_schema",
    "import_official_image",
    "import_text_embedding",
    "import_text_table",
    "read_run",
    "read_scene_shard",
    "superpixel_feature_table",
    "to_table",
    "vocabulary_hash",
    "write_run",
    "images_table",
]
