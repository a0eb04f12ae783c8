"""pySigma's reading of Sigma files, one line per condition, for tests/sigma_parity.rs.

For each file given:
  <file>\t<rule name or id>\t<condition index>\t<canonical condition tree>
  <file>\t<correlation name or id>\tcorr\t<summary>
  <file>\tERROR\t<exception class>                    (pySigma refuses the file)
The tree is printed as auditflow's `rules::sigma::canon` prints its own: n-ary AND/OR
flattened, NOT(x), leaves `field=<value>` and `kw:<value>`, strings with `*`/`?` as wildcards
and literal `\\`, `*`, `?` escaped. Files named in one call are also loaded as one rule set
(`--collection`) to check references across them.
"""
import sys

from sigma.collection import SigmaCollection
from sigma.conditions import (ConditionAND, ConditionFieldEqualsValueExpression, ConditionNOT, ConditionOR,
                              ConditionValueExpression)
from sigma.correlations import SigmaCorrelationCondition, SigmaCorrelationRule
from sigma.types import (Placeholder, SigmaBool, SigmaCasedString, SigmaCIDRExpression, SigmaCompareExpression,
                         SigmaExists, SigmaExpansion, SigmaFieldReference, SigmaNull, SigmaNumber,
                         SigmaRegularExpression, SigmaString, SpecialChars)


def s_str(s: SigmaString) -> str:
    out = []
    for p in s.s:
        if p == SpecialChars.WILDCARD_MULTI:
            out.append("*")
        elif p == SpecialChars.WILDCARD_SINGLE:
            out.append("?")
        elif isinstance(p, Placeholder):
            out.append("%" + p.name + "%")
        else:
            out.append(p.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?"))
    return '"' + "".join(out) + '"'


def val(v) -> str:
    if isinstance(v, SigmaCasedString):  # a subclass of SigmaString: first
        return "cased:" + s_str(v)
    if isinstance(v, SigmaString):
        return s_str(v)
    if isinstance(v, SigmaBool):
        return "true" if v.boolean else "false"
    if isinstance(v, SigmaNumber):
        return repr(v.number)
    if isinstance(v, SigmaNull):
        return "null"
    if isinstance(v, SigmaRegularExpression):
        flags = "".join(sorted(SigmaRegularExpression.sigma_to_re_flag[f] for f in v.flags))
        return f"re:/{v.regexp}/{flags}"
    if isinstance(v, SigmaCIDRExpression):
        return f"cidr:{v.network}"
    if isinstance(v, SigmaCompareExpression):
        return f"{v.op.name.lower()}:{v.number.number}"
    if isinstance(v, SigmaExists):
        return f"exists:{str(v.exists).lower()}"
    if isinstance(v, SigmaFieldReference):
        return f"fieldref:{v.field}" + (":sw" if v.starts_with else "") + (":ew" if v.ends_with else "")
    if isinstance(v, SigmaExpansion):
        return "any[" + ", ".join(val(x) for x in v.values) + "]"
    raise TypeError(type(v))


def flat(n, cls):
    for a in n.args:
        yield from (flat(a, cls) if isinstance(a, cls) else (a,))


def canon(n) -> str:
    if isinstance(n, ConditionAND):
        return "AND(" + ", ".join(canon(a) for a in flat(n, ConditionAND)) + ")"
    if isinstance(n, ConditionOR):
        return "OR(" + ", ".join(canon(a) for a in flat(n, ConditionOR)) + ")"
    if isinstance(n, ConditionNOT):
        return "NOT(" + canon(n.args[0]) + ")"
    if isinstance(n, ConditionFieldEqualsValueExpression):
        return f"{n.field}={val(n.value)}"
    if isinstance(n, ConditionValueExpression):
        return f"kw:{val(n.value)}"
    raise TypeError(type(n))


def corr_summary(r: SigmaCorrelationRule) -> str:
    c = r.condition
    if isinstance(c, SigmaCorrelationCondition):
        cond = f"{c.op.name.lower()} {c.count}" + (f" field={c.fieldref}" if c.fieldref else "")
    else:
        cond = f"expr:{c.expression}"
    rules = ",".join(x.reference for x in r.rules or [])
    group_by = ",".join(r.group_by or [])
    return (f"type={r.type.name.lower()} rules={rules} group_by={group_by} "
            f"timespan={r.timespan.seconds}s cond={cond} generate={str(r.generate).lower()}")


def dump(path: str) -> None:
    name = path.rsplit("/", 1)[-1]
    try:
        with open(path) as f:
            coll = SigmaCollection.from_yaml(f.read())
        lines = []
        for r in coll:
            ref = r.name or str(r.id)
            if isinstance(r, SigmaCorrelationRule):
                lines.append(f"{name}\t{ref}\tcorr\t{corr_summary(r)}")
            else:
                for i, pc in enumerate(r.detection.parsed_condition):
                    lines.append(f"{name}\t{ref}\t{i}\t{canon(pc.parsed)}")
    except Exception as e:  # a refusal, whatever its class
        print(f"{name}\tERROR\t{type(e).__name__}: {e}".replace("\n", " "))
        return
    print("\n".join(lines))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--collection":
        # Every file as one rule set: references resolve across files, as auditflow loads them.
        coll = SigmaCollection.load_ruleset(args[1:])
        output = sorted(r.name or str(r.id) for r in coll.get_output_rules())
        print(f"collection\tOK\t{len(list(coll))}\t{','.join(output)}")
    else:
        for p in args:
            dump(p)
