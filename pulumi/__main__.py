"""edgecv-cloud: the cloud side of the fleet (artifact store, evidence store, telemetry, identities).

Run by the Pulumi CLI (`pulumi preview` / `pulumi up` in this directory); see README.md.
"""

import pulumi

from edgecv_cloud.stack import build

outputs = build()
for name, value in outputs.items():
    pulumi.export(name, value)
