"""A model file's chat template, run as untrusted code.

The Jinja chat template comes with the model file, which may come from
anyone: it is rendered in Jinja's ImmutableSandboxedEnvironment (no access to
Python internals, no mutation of the data passed in) with limits on what one
render may cost:

- MAX_CHARS characters of output, and the same bound on every string or
  container the template builds (string repetition, concatenation, padding
  and format widths, joins, replaces and nested lists are checked before they
  are built, so a template cannot make a multi-gigabyte string);
- MAX_STEPS lines of template code executed and MAX_SECONDS of wall time (a
  trace function on the template's own code counts them, so nested loops
  end);
- recursion as deep as Python allows.

Every failure, compiling or rendering, is a ChatTemplateError with one line.

ChatTemplate.render_spans() also says which characters of the output are the
messages' contents, so that a caller can tokenize special-token text typed by
a user as plain text (split_at_template_specials).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import time

from .errors import Runq4Error

__all__ = ["ChatTemplate", "ChatTemplateError", "MAX_CHARS", "MAX_STEPS", "MAX_SECONDS",
           "split_at_template_specials"]

MAX_CHARS = 1 << 22     # output characters; also the largest string or container a template may build
MAX_STEPS = 500_000     # lines of template code one render may execute
MAX_SECONDS = 10.0      # wall time of one render

# Unicode noncharacters: never in real text, so they can mark where message
# contents are in the rendered output.
_MARKS = [chr(c) for c in range(0xFDD0, 0xFDF0)]


class ChatTemplateError(Runq4Error):
    """The model's chat template failed to compile or render, or went past a limit."""


class _Limit(BaseException):
    """A render limit was reached (a BaseException, so that no except Exception
    inside Jinja's runtime can swallow it)."""


def _one_line(e) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    lineno = getattr(e, "lineno", None)
    where = f" (template line {lineno})" if lineno else ""
    return f"{type(e).__name__}: {msg[:300]}{where}"


class _Budget:
    """Sizes of the values one render builds, and the checks that keep them
    under MAX_CHARS. A container's size is 1 + the sizes of its items, a
    string's its length: a bound on what str() of it produces."""

    def __init__(self):
        self.known = {}  # id -> (object, size): containers measured in this render (kept alive: ids stay unique)

    def size(self, obj, limit=MAX_CHARS) -> int:
        """Size of obj, stopping (and returning > limit) once it exceeds limit."""
        if isinstance(obj, str):
            return len(obj)
        if isinstance(obj, int) and not isinstance(obj, bool):
            return 1 + obj.bit_length() // 3
        if isinstance(obj, range):
            return len(obj)
        if not isinstance(obj, (list, tuple, dict, set, frozenset)):
            return 1
        hit = self.known.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        total = 1
        items = list(obj.items()) if isinstance(obj, dict) else obj
        for item in items:
            if isinstance(item, tuple) and isinstance(obj, dict):
                total += self.size(item[0], limit) + self.size(item[1], limit)
            else:
                total += self.size(item, limit)
            if total > limit:
                return total
        self.known[id(obj)] = (obj, total)
        return total

    def check(self, obj, what="a value"):
        if self.size(obj) > MAX_CHARS:
            raise _Limit(f"{what} larger than {MAX_CHARS} characters")
        return obj

    def check_args(self, args, kwargs, what):
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CHARS:
                raise _Limit(f"{what}: the number {a} is larger than {MAX_CHARS}")
            self.check(a, what)

    def check_format(self, fmt):
        """Widths and precisions in a format string add up to at most MAX_CHARS."""
        if isinstance(fmt, str) and sum(int(d) for d in re.findall(r"\d+", fmt) if len(d) < 12) \
                + sum(len(d) >= 12 for d in re.findall(r"\d+", fmt)) * (MAX_CHARS + 1) > MAX_CHARS:
            raise _Limit("a format width larger than the output limit")
        if isinstance(fmt, str) and "%*" in fmt.replace("%%", ""):
            raise _Limit("a '*' width in a % format")

    def estimate_call(self, func, args, kwargs):
        """Refuses a string method or filter whose result would be too large
        before it is built: replace, expandtabs, join, format."""
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__self__", None)
        if isinstance(owner, str):
            if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
                n = owner.count(args[0]) if args[0] else len(owner) + 1
                if len(owner) + n * len(args[1]) > MAX_CHARS:
                    raise _Limit("a replace() result larger than the output limit")
            elif name == "expandtabs":
                tab = args[0] if args else kwargs.get("tabsize", 8)
                if isinstance(tab, int) and len(owner) + owner.count("\t") * max(tab, 0) > MAX_CHARS:
                    raise _Limit("an expandtabs() result larger than the output limit")
            elif name == "join" and args:
                self.check(args[0], "join()")
                seq = args[0]
                if isinstance(seq, (list, tuple)) and len(owner) * len(seq) > MAX_CHARS:
                    raise _Limit("a join() result larger than the output limit")


def _wrap_filter(budget, name, f):
    passes_context = hasattr(f, "jinja_pass_arg")  # then args[0] is Jinja's context or environment

    def checked(*all_args, **kwargs):
        args = all_args[1:] if passes_context else all_args
        budget.check_args(args, kwargs, f"filter {name}")
        if name == "replace" and len(args) >= 3 and all(isinstance(a, str) for a in args[:3]):
            s, old, new = args[:3]
            n = s.count(old) if old else len(s) + 1
            if len(s) + n * len(new) > MAX_CHARS:
                raise _Limit("a replace result larger than the output limit")
        elif name == "format" and args:
            budget.check_format(args[0])
        elif name in ("join", "sum") and args:
            sep = args[1] if len(args) > 1 and isinstance(args[1], str) else kwargs.get("d", "")
            if isinstance(args[0], (list, tuple)) and isinstance(sep, str) \
                    and len(sep) * len(args[0]) > MAX_CHARS:
                raise _Limit(f"a {name} result larger than the output limit")
        elif name in ("indent", "wordwrap", "center") and args and isinstance(args[0], str):
            width = args[1] if len(args) > 1 else kwargs.get("width", 0)
            lines = args[0].count("\n") + 1
            if isinstance(width, int) and width * lines > MAX_CHARS:
                raise _Limit(f"a {name} result larger than the output limit")
        return budget.check(f(*all_args, **kwargs), f"the result of filter {name}")

    checked.__name__ = getattr(f, "__name__", name)
    for attr in ("jinja_pass_arg",):  # pass_context / pass_environment markers
        if hasattr(f, attr):
            setattr(checked, attr, getattr(f, attr))
    return checked


def _environment(budget):
    import jinja2
    from jinja2.compiler import CodeGenerator
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generator(CodeGenerator):
        """Routes `~` and container literals through the budget checks."""

        def visit_Concat(self, node, frame):
            self.write("environment.rq4_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

        def _checked(self, parent, node, frame):
            self.write("environment.rq4_budget.check(")
            parent(self, node, frame)
            self.write(", 'a list or dict literal')")

        def visit_List(self, node, frame):
            self._checked(CodeGenerator.visit_List, node, frame)

        def visit_Tuple(self, node, frame):
            self._checked(CodeGenerator.visit_Tuple, node, frame)

        def visit_Dict(self, node, frame):
            self._checked(CodeGenerator.visit_Dict, node, frame)

    class Env(ImmutableSandboxedEnvironment):
        code_generator_class = Generator
        intercepted_binops = frozenset(["*", "**", "+", "%", "//", "/", "-"])

        def call_binop(self, context, operator, left, right):
            b = self.rq4_budget
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(n, int) and not isinstance(n, (bool,)) and \
                            isinstance(seq, (str, list, tuple)) and b.size(seq) * max(n, 0) > MAX_CHARS:
                        raise _Limit("a repetition larger than the output limit")
                if isinstance(left, int) and isinstance(right, int) and \
                        left.bit_length() + right.bit_length() > 4 * MAX_CHARS // 3:
                    raise _Limit("a product larger than the output limit")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and \
                        right > 0 and max(left.bit_length(), 1) * right > 4 * MAX_CHARS // 3:
                    raise _Limit("a power larger than the output limit")
            elif operator == "+":
                if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                        and b.size(left) + b.size(right) > MAX_CHARS:
                    raise _Limit("a concatenation larger than the output limit")
            elif operator == "%" and isinstance(left, str):
                b.check_format(left)
                b.check(right, "% arguments")
            return b.check(super().call_binop(context, operator, left, right), "a result")

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
            b = __self.rq4_budget
            b.check_args(args, kwargs, f"{getattr(__obj, '__name__', 'a call')}()")
            b.estimate_call(__obj, args, kwargs)
            return b.check(super().call(__context, __obj, *args, **kwargs), "a call result")

        def wrap_str_format(self, value):
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                self.rq4_budget.check_format(value.__self__)
            return wrapped

        def rq4_concat(self, values):
            parts, total = [], 0
            for v in values:
                self.rq4_budget.check(v, "a ~ operand")
                s = v if isinstance(v, str) else str(v)
                total += len(s)
                if total > MAX_CHARS:
                    raise _Limit("a ~ concatenation larger than the output limit")
                parts.append(s)
            return "".join(parts)

        def concat(self, parts):  # block bodies, macros, {% set %} blocks
            parts = list(parts)
            if sum(len(p) for p in parts) > MAX_CHARS:
                raise _Limit("a block larger than the output limit")
            return "".join(parts)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    # as transformers' apply_chat_template: trim_blocks, lstrip_blocks, loop
    # controls, a tojson that keeps non-ASCII, raise_exception(), strftime_now()
    env = Env(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.rq4_budget = budget
    env.filters["tojson"] = tojson
    env.globals.pop("lipsum", None)  # it builds text of any length in one call
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(str(fmt)[:200])
    env.filters = {name: _wrap_filter(budget, name, f) for name, f in env.filters.items()}
    return env


class _Tracer:
    """Counts executed lines and checks the clock while a render runs."""

    def __init__(self):
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS
        self.tripped = None

    def __call__(self, frame, event, arg):
        # only the template's own code: its loops are what must end; the
        # checks and Jinja's runtime run a bounded amount of work per line
        return self.local if frame.f_code.co_filename == "<template>" else None

    def local(self, frame, event, arg):
        if event == "line":
            self.steps += 1
            if self.tripped is None:
                if self.steps > MAX_STEPS:
                    self.tripped = f"more than {MAX_STEPS} steps"
                elif self.steps % 1024 == 0 and time.monotonic() > self.deadline:
                    self.tripped = f"more than {MAX_SECONDS:g} s"
            if self.tripped is not None:
                raise _Limit(f"the template ran for {self.tripped}")
        return self.local


class ChatTemplate:
    """ChatTemplate(source): a compiled chat template. render(messages,
    add_generation_prompt=True, **variables) -> str; ChatTemplateError on any
    failure."""

    def __init__(self, source: str):
        if not isinstance(source, str):
            raise ChatTemplateError("the chat template is not text")
        self.source = source
        self._budget = _Budget()
        try:
            self._env = _environment(self._budget)
            self._template = self._guarded(lambda: self._env.from_string(source))
        except ChatTemplateError:
            raise
        except (_Limit, Exception) as e:
            raise ChatTemplateError(f"the model's chat template does not compile: {_one_line(e)}") from None

    def _guarded(self, fn):
        tracer = _Tracer()
        old = sys.gettrace()
        sys.settrace(tracer)
        try:
            return fn()
        finally:
            sys.settrace(old)

    def render(self, messages, add_generation_prompt=True, **variables) -> str:
        def run():
            out, total = [], 0
            for chunk in self._template.generate(messages=messages,
                                                 add_generation_prompt=add_generation_prompt,
                                                 **variables):
                total += len(chunk)
                if total > MAX_CHARS:
                    raise _Limit(f"the output is longer than {MAX_CHARS} characters")
                out.append(chunk)
            return "".join(out)

        self._budget.known.clear()
        try:
            return self._guarded(run)
        except _Limit as e:
            raise ChatTemplateError(f"the model's chat template went past a limit: {e}") from None
        except RecursionError:
            raise ChatTemplateError("the model's chat template recursed too deeply") from None
        except MemoryError:
            raise ChatTemplateError("the model's chat template ran out of memory") from None
        except Exception as e:
            raise ChatTemplateError(f"the model's chat template failed: {_one_line(e)}") from None
        finally:
            self._budget.known.clear()

    def render_spans(self, messages, add_generation_prompt=True, check=None, **variables):
        """(text, spans): the rendering and the [start, end) ranges of it that
        are the messages' contents, or None when the template transforms the
        contents beyond trimming (then where they are is not known).
        check(text), if given, runs on the rendering before the extra renders
        that find the spans."""
        text = self.render(messages, add_generation_prompt, **variables)
        if check is not None:
            check(text)
        seen = set(self.source) | set(text)
        for m in messages:
            for v in m.values():
                if isinstance(v, str):
                    seen |= set(v)
        free = [c for c in _MARKS if c not in seen]
        if len(free) < 2:
            return text, None
        open_, close = free[:2]
        for transform in (lambda s: s, str.strip):
            marked_msgs = [dict(m, content=open_ + transform(m["content"]) + close)
                           if isinstance(m.get("content"), str) else m for m in messages]
            try:
                marked = self.render(marked_msgs, add_generation_prompt, **variables)
            except ChatTemplateError:
                return text, None
            spans = _unmark(marked, open_, close)
            if spans is not None and spans[0] == text:
                return text, spans[1]
        return text, None


def _unmark(marked, open_, close):
    """(text without the marks, [(start, end)] between each open and close
    mark), or None if the marks are not in well-formed pairs."""
    out, spans, start, pos = [], [], None, 0
    for piece in re.split(f"([{open_}{close}])", marked):
        if piece == open_:
            if start is not None:
                return None
            start = pos
        elif piece == close:
            if start is None:
                return None
            spans.append((start, pos))
            start = None
        else:
            out.append(piece)
            pos += len(piece)
    if start is not None:
        return None
    return "".join(out), spans


def find_specials(text, specials):
    """[(start, end, token text)] of the special-token texts in text, matched
    leftmost-longest as the tokenizers library matches added tokens."""
    if not specials:
        return []
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    return [(m.start(), m.end(), m.group(0)) for m in pattern.finditer(text)]


def split_at_template_specials(text, spans, specials):
    """The rendering cut into pieces [(piece, is_special)]: the special-token
    texts that the template wrote are their own pieces; special-token text
    inside a message's content (a span) stays in the plain text around it.
    Returns None when no special-token text lies inside a span (the whole
    text can then be tokenized with special tokens parsed)."""
    matches = find_specials(text, specials)

    def inside(a, b):
        return any(a < e and s < b for s, e in spans)

    if not any(inside(a, b) for a, b, _ in matches):
        return None
    pieces, pos = [], 0
    for a, b, tok in matches:
        if inside(a, b) or a < pos:
            continue
        if a > pos:
            pieces.append((text[pos:a], False))
        pieces.append((tok, True))
        pos = b
    if pos < len(text):
        pieces.append((text[pos:], False))
    return pieces


def _strings(obj, depth=0):
    """Every str in a nest of dicts, lists and tuples."""
    if isinstance(obj, str):
        yield obj
    elif depth < 32 and isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k, depth + 1)
            yield from _strings(v, depth + 1)
    elif depth < 32 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v, depth + 1)


def chat_ids(template, messages, encode, specials, add_generation_prompt=True, parse_special=False,
             max_chars=None, **variables):
    """The token ids of a conversation: the template's own special-token text
    (e.g. <|eot_id|> between turns) as special tokens, and special-token text
    inside the messages' contents as plain text (parse_special=True: as
    special tokens too, as transformers does). Special-token text in any
    other string the caller passes (a role, a template variable) is an
    ArgumentError. encode(text, special) -> ids; specials: the special tokens'
    texts. max_chars: a rendering longer than this cannot fit in the
    context (ContextFullError, before it is tokenized)."""
    from .errors import ArgumentError, ContextFullError

    def check(text):
        if max_chars is not None and len(text) > max_chars:
            raise ContextFullError(f"the rendered conversation ({len(text)} characters) cannot fit in the "
                                   f"context (at most {max_chars} characters)")

    if parse_special:
        text = template.render(messages, add_generation_prompt, **variables)
        check(text)
        return encode(text, True)
    others = [s for m in messages for k, v in m.items() if k != "content" for s in _strings(v)]
    # bos_token and eos_token are the model's own special tokens
    others += [s for k, v in variables.items() if k not in ("bos_token", "eos_token") for s in _strings(v)]
    for s in others:
        found = find_specials(s, specials)
        if found:
            raise ArgumentError(f"special-token text {found[0][2]!r} in {s[:60]!r}: only message contents "
                                f"may hold it (as plain text)")
    text, spans = template.render_spans(messages, add_generation_prompt, check, **variables)
    if spans is None:
        # the template changes the contents, so where they are is unknown:
        # refuse special-token text in them rather than parse it
        for m in messages:
            found = find_specials(m["content"], specials)
            if found:
                raise ArgumentError(f"the message content holds special-token text {found[0][2]!r}, and "
                                    f"this chat template transforms contents so it cannot be kept plain")
        return encode(text, True)
    pieces = split_at_template_specials(text, spans, specials)
    if pieces is None:
        return encode(text, True)
    ids = []
    for piece, special in pieces:
        ids.extend(encode(piece, special))
    return ids
