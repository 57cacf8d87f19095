"""Prints a CloudFormation template as JSON, parsed by cfn-lint's own decoder
(the parser `cfn-lint template.yaml` uses: short-form intrinsics such as
`!GetAtt A.B` come out in their long form, duplicate keys are refused)."""

import json
import sys

from cfnlint.decode import decode

template, problems = decode(sys.argv[1])
if problems or template is None:
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1)
json.dump(template, sys.stdout)
