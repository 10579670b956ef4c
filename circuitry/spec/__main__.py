"""`python -m circuitry.spec [--plugins]` prints the JSON Schema of circuit specs.

The committed schema/circuitry-spec-v1.json is this output (regenerate it with
`python -m circuitry.spec > schema/circuitry-spec-v1.json`); with --plugins
the names of the installed detectors, metrics, interventions and datasets are
enumerated too, for a schema that matches one installation.
"""

import json
import sys

from circuitry.spec.format import json_schema

if __name__ == "__main__":
    args = sys.argv[1:]
    if args not in ([], ["--plugins"]):
        sys.stderr.write("usage: python -m circuitry.spec [--plugins]\n")
        sys.exit(2)
    sys.stdout.write(json.dumps(json_schema(plugins=bool(args)), indent=2, ensure_ascii=False) + "\n")
