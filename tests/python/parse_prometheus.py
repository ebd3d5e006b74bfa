"""Parses OpenMetrics text (stdin) with prometheus_client's own strict OpenMetrics parser, which
is what Prometheus reads from Spindle's /metrics; prints the families as JSON.

Any line the parser refuses makes it raise: the test fails with the text it could not read.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "samples": [[sample.name, sample.labels, sample.value] for sample in family.samples],
    }
print(json.dumps(families))
