"""Validates Istio resources (multi-document YAML on stdin, or the files named) against
Istio's published CRD schemas, as the cloudcoil-models-istio package models them.

Every document must be one of the kinds `tollgate export istio` writes, with the types and
enum values the schema allows and no field the schema does not know: the models themselves
ignore unknown fields, so the script compares what was written with what the model kept.
Exits 1 naming the document and the field of the first problem of each document.
"""

import sys

import pydantic
import yaml
from cloudcoil.models.istio.extensions import v1alpha1 as extensions
from cloudcoil.models.istio.networking import v1 as networking

MODELS = {
    ("networking.istio.io/v1", "Gateway"): networking.Gateway,
    ("networking.istio.io/v1", "VirtualService"): networking.VirtualService,
    ("networking.istio.io/v1", "DestinationRule"): networking.DestinationRule,
    ("networking.istio.io/v1", "ServiceEntry"): networking.ServiceEntry,
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): extensions.WasmPlugin,
}


def unknown_fields(written, kept, path):
    """Paths of the keys in `written` that the model did not keep."""
    if isinstance(written, dict) and isinstance(kept, dict):
        for key, value in written.items():
            child = f"{path}.{key}" if path else key
            if key not in kept:
                yield child
            else:
                yield from unknown_fields(value, kept[key], child)
    elif isinstance(written, list) and isinstance(kept, list):
        for index, (value, kept_value) in enumerate(zip(written, kept)):
            yield from unknown_fields(value, kept_value, f"{path}[{index}]")


def problems(document):
    """The problems of one document, as `field: message` lines."""
    if not isinstance(document, dict):
        return [f"(document): not a mapping but {type(document).__name__}"]
    key = (document.get("apiVersion"), document.get("kind"))
    model = MODELS.get(key)
    if model is None:
        return [f"apiVersion/kind: {key[0]}/{key[1]} is not a kind this tool knows"]
    if not document.get("metadata", {}).get("name"):
        return ["metadata.name: missing"]
    try:
        parsed = model.model_validate(document)
    except pydantic.ValidationError as error:
        return [
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}"
            for issue in error.errors()
        ]
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"{field}: unknown field" for field in unknown_fields(document, kept, "")]


def main():
    texts = [open(name).read() for name in sys.argv[1:]] or [sys.stdin.read()]
    failed = False
    count = 0
    for text in texts:
        for index, document in enumerate(yaml.safe_load_all(text)):
            if document is None:
                continue
            count += 1
            name = (
                f"{document.get('kind')} {document.get('metadata', {}).get('name')}"
                if isinstance(document, dict)
                else f"document {index}"
            )
            for problem in problems(document):
                failed = True
                print(f"{name}: {problem}", file=sys.stderr)
    if count == 0:
        print("no documents", file=sys.stderr)
        failed = True
    print(f"{count} documents checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
