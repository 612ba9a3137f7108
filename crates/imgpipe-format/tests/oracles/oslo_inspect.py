#!/usr/bin/env python3
"""Differential oracle: run oslo.utils' format_inspector over files, print one JSON object.

Usage: oslo_inspect.py FILE...  ->  {"FILE": {"format": str|null, "safe": bool, "failures": [..],
                                             "virtual_size": int, "error": str|null}, ...}

The whole file is streamed through InspectWrapper (64 KiB reads), then the Glance-style decision
is applied: several matches are an error except {iso, gpt}, which is iso.
"""
import json
import logging
import sys

from oslo_utils.imageutils import format_inspector as fi

logging.disable(logging.CRITICAL)


def inspect(path):
    out = {"format": None, "safe": False, "failures": [], "virtual_size": 0, "error": None}
    try:
        with open(path, "rb") as f:
            w = fi.InspectWrapper(f)
            while w.read(65536):
                pass
            w.close()
        matches = w.formats or []
        names = sorted(str(m) for m in matches)
        if names == ["gpt", "iso"]:
            matches = [m for m in matches if str(m) == "iso"]
        if len(matches) != 1:
            out["error"] = "multiple formats: " + ",".join(names)
            return out
        insp = matches[0]
        out["format"] = str(insp)
        try:
            out["virtual_size"] = int(insp.virtual_size)
        except Exception as e:  # noqa: BLE001 - an oslo crash is a result here
            out["error"] = "virtual_size: %s: %s" % (type(e).__name__, e)
        try:
            insp.safety_check()
            out["safe"] = out["error"] is None
        except fi.SafetyCheckFailed as e:
            out["failures"] = sorted(e.failures.keys())
        except Exception as e:  # noqa: BLE001
            out["error"] = "safety_check: %s: %s" % (type(e).__name__, e)
    except Exception as e:  # noqa: BLE001
        out["error"] = "%s: %s" % (type(e).__name__, e)
    return out


if __name__ == "__main__":
    print(json.dumps({p: inspect(p) for p in sys.argv[1:]}, indent=1))
