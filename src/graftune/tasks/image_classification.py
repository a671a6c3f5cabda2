"""Image classification: image files in (class folders, or a CSV/JSONL of paths), one label out."""

from __future__ import annotations

import io
from typing import Any

from graftune.tasks.classification import Classification

THUMBNAIL = 96  # pixels on the longer side of a report's thumbnail


class ImageClassification(Classification):
    name = "image-classification"
    modality = "image"

    def example_cell(self, row: dict[str, Any]) -> str:
        """A thumbnail of the image file, embedded in the report (or a note when the file is gone)."""
        from graftune.data.images import open_rgb
        from graftune.errors import UserError

        try:
            image = open_rgb(row["input"])
        except UserError:
            return super().example_cell({**row, "input": "(image file missing or unreadable)"})
        return thumbnail_cell(image, row["where"])


def thumbnail_cell(image: Any, where: str) -> str:
    """A PIL image as an inline thumbnail with its origin below."""
    from graftune.pages import escape, png_image

    image = image.copy()
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f'{png_image(buffer.getvalue(), where, "thumb")}<br><span class="note">{escape(where)}</span>'
