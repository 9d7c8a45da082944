#!/usr/bin/env python3
"""Stand-in for IAM Roles Anywhere's `aws_signing_helper credential-process` (AWS cannot be reached here).

Takes the real tool's arguments, refuses as it would when the certificate or key cannot be read or an ARN is
missing, and prints the same JSON shape (Version 1, AccessKeyId, SecretAccessKey, SessionToken, Expiration)
with the stand-in credentials the SigV4-verifying test proxy knows. Installed on the Ansible test hosts in
place of the real binary; standard library only, so it runs on any Python 3.
"""

import argparse
import datetime
import json
import sys

ACCESS_KEY = "ASIAEDGECVSTANDIN001"
SECRET_KEY = "stand-in-roles-anywhere-secret"
SESSION_TOKEN = "stand-in-session-token"


def main(argv):
    parser = argparse.ArgumentParser(prog="aws_signing_helper")
    sub = parser.add_subparsers(dest="command", required=True)
    cp = sub.add_parser("credential-process")
    for name in ("certificate", "private-key", "trust-anchor-arn", "profile-arn", "role-arn"):
        cp.add_argument(f"--{name}", required=True)
    cp.add_argument("--region")
    cp.add_argument("--session-duration", type=int, default=3600)
    args = parser.parse_args(argv)
    for what, path in (("certificate", args.certificate), ("private key", args.private_key)):
        try:
            with open(path) as f:
                text = f.read()
        except OSError as exc:
            sys.exit(f"unable to read {what} {path}: {exc.strerror}")
        if "-----BEGIN" not in text:
            sys.exit(f"{what} {path} is not PEM")
    for arn in (args.trust_anchor_arn, args.profile_arn, args.role_arn):
        if not arn.startswith("arn:"):
            sys.exit(f"not an ARN: {arn}")
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=args.session_duration)
    print(json.dumps({"Version": 1, "AccessKeyId": ACCESS_KEY, "SecretAccessKey": SECRET_KEY,
                      "SessionToken": SESSION_TOKEN, "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}))


if __name__ == "__main__":
    main(sys.argv[1:])
