#!/usr/bin/env python3
"""Differential oracle: run oslo.utils' format_inspector over files, print one JSON object.

Usage: oslo_inspect.py FILE...  ->  {"FILE": {"outcome": "accepted"|"rejected"|"crashed",
    "format": str|null, "safe": bool, "failures": [..], "virtual_size": int, "error": str|null}}

"rejected" = oslo refused the image the way it is designed to (SafetyCheckFailed, ImageFormatError,
multiple formats); "crashed" = any other exception (a bug in oslo.utils).

The whole file is streamed through InspectWrapper (64 KiB reads), then the Glance-style decision
is applied: several matches are an error except {iso, gpt}, which is iso.
"""
import json
import logging
import sys

from oslo_utils.imageutils import format_inspector as fi

logging.disable(logging.CRITICAL)


def inspect(path):
    out = {"outcome": "crashed", "format": None, "safe": False, "failures": [],
           "virtual_size": 0, "error": None}
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
            out["outcome"] = "rejected"
            return out
        insp = matches[0]
        out["format"] = str(insp)
        try:
            out["virtual_size"] = int(insp.virtual_size)
        except Exception as e:  # noqa: BLE001 - an oslo crash is a result here
            out["error"] = "virtual_size: %s: %s" % (type(e).__name__, e)
        crashed = out["error"] is not None
        try:
            insp.safety_check()
            out["safe"] = not crashed
            out["outcome"] = "crashed" if crashed else "accepted"
        except fi.SafetyCheckFailed as e:
            out["failures"] = sorted(e.failures.keys())
            out["outcome"] = "crashed" if crashed else "rejected"
        except fi.ImageFormatError as e:
            out["error"] = "safety_check: ImageFormatError: %s" % e
            out["outcome"] = "crashed" if crashed else "rejected"
        except Exception as e:  # noqa: BLE001
            out["error"] = "safety_check: %s: %s" % (type(e).__name__, e)
    except fi.ImageFormatError as e:
        out["error"] = "ImageFormatError: %s" % e
        out["outcome"] = "rejected"
    except Exception as e:  # noqa: BLE001
        out["error"] = "%s: %s" % (type(e).__name__, e)
    return out


if __name__ == "__main__":
    print(json.dumps({p: inspect(p) for p in sys.argv[1:]}, indent=1))
