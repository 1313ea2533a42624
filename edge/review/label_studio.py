"""The archive's cells as Label Studio tasks (JSON import format) with the machine's class as a prediction.

Images are addressed through Label Studio's local-files storage: unpack the
archive into a folder named like the archive, under LOCAL_FILES_DOCUMENT_ROOT.
"""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

FROM_NAME = "cell_class"
TO_NAME = "image"


def label_studio_tasks(manifest: dict, folder: str) -> list[dict]:
    def url(path: str) -> str:
        return f"/data/local-files/?d={folder}/{path}"

    tasks = []
    for cell in manifest["cells"]:
        data = {"image": url(cell["crop"]), "cell_id": cell["cell_id"], "session_id": cell["session_id"],
                "kind": cell["kind"], "suggested": cell["suggested"], "confidence": cell["confidence"],
                "threshold": cell["threshold"]}
        if cell["context"]:
            data["context"] = url(cell["context"]["image"])
        tasks.append({"data": data, "predictions": [{
            "model_version": f"bundle-{cell['bundle_manifest_sha256'][:12]}",
            "score": cell["confidence"],
            "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                        "value": {"choices": [cell["suggested"]]}}]}]})
    return tasks


def label_studio_config(choices: list[dict]) -> str:
    """A labeling config whose names match the tasks: one image, one single choice."""
    lines = ["<View>",
             f'  <Image name="{TO_NAME}" value="$image"/>',
             '  <Text name="cell" value="$cell_id"/>',
             f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">']
    lines += [f"    <Choice value={quoteattr(c['value'])}/>" for c in choices]
    lines += ["  </Choices>", "</View>", ""]
    return "\n".join(lines)
