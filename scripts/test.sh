#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Never reach real AWS or the EC2 metadata service from a test run.
export AWS_EC2_METADATA_DISABLED=true
exec .venv/bin/python -m pytest "$@"
