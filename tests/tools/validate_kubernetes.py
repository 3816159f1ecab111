"""Validates the Kubernetes manifests of deploy/ against Kubernetes' own schemas, as the
kubernetes-validate package publishes them (strict: a field the schema does not know is an
error).

Arguments are kustomization folders. Every resource file a kustomization lists is
validated as written; an overlay's patches (JSON 6902 operations, inline, on a resource
named by kind and name) are applied to its bases' resources and the results validated
too, since that is what reaches the cluster. Prints one line per problem as
`FILE: KIND/NAME: PATH: MESSAGE` and exits 1 if there is any; on success prints one line
per resource checked.
"""

import copy
import os
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import latest_version

VERSION = latest_version()


def load_documents(path):
    with open(path, encoding="utf-8") as file:
        return [document for document in yaml.safe_load_all(file) if document is not None]


def pointer_parts(pointer):
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]


def apply_operation(document, operation):
    parts = pointer_parts(operation["path"])
    parent = document
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    op = operation["op"]
    if op in ("add", "replace"):
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op == "add":
                parent.insert(index, operation["value"])
            else:
                parent[index] = operation["value"]
        else:
            if op == "replace" and last not in parent:
                raise ValueError(f"replace {operation['path']}: no such field")
            parent[last] = operation["value"]
    elif op == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    else:
        raise ValueError(f"{op}: an operation this tool does not apply")


def resources(folder, problems):
    """(file, document) of every resource a kustomization folder produces, patched."""
    kustomization = load_documents(os.path.join(folder, "kustomization.yaml"))[0]
    produced = []
    for entry in kustomization.get("resources", []):
        path = os.path.normpath(os.path.join(folder, entry))
        if os.path.isdir(path):
            produced.extend(resources(path, problems))
        elif not os.path.exists(path):
            problems.append(f"{folder}/kustomization.yaml: resources: {entry} does not exist")
        else:
            produced.extend((path, document) for document in load_documents(path))
    for patch in kustomization.get("patches", []):
        target = patch.get("target", {})
        matched = [
            (path, document)
            for path, document in produced
            if document.get("kind") == target.get("kind")
            and document.get("metadata", {}).get("name") == target.get("name")
        ]
        if not matched:
            problems.append(f"{folder}/kustomization.yaml: patches: no resource {target}")
        for index, (path, document) in enumerate(produced):
            if (path, document) not in matched:
                continue
            patched = copy.deepcopy(document)
            try:
                for operation in yaml.safe_load(patch["patch"]):
                    apply_operation(patched, operation)
            except (KeyError, IndexError, ValueError) as error:
                problems.append(f"{folder}/kustomization.yaml: patches: {error}")
                continue
            produced[index] = (f"{folder}/kustomization.yaml (patched {path})", patched)
    return produced


def main(folders):
    problems = []
    for folder in folders:
        for path, document in resources(folder, problems):
            name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(document, VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(part) for part in error.path) or "(document)"
                problems.append(f"{path}: {name}: {where}: {error.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as error:
                problems.append(f"{path}: {name}: {error}")
            else:
                print(f"{path}: {name}: valid for Kubernetes {VERSION}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
