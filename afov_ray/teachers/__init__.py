"""afov_ray.teachers: class dictionary, teacher-output schema and storage, official-file importers
(afov-reference.md sections 3, 4.1-4.2). Heavy deps (torch, pyarrow, PIL) are imported inside functions."""

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
    read_run,
    read_scene_shard,
    superpixel_feature_table,
    to_table,
    write_run,
    images_table,
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
