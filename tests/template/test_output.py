"""OutputParser: thinking first, then tool calls out of what is left, however the output is cut."""

from __future__ import annotations

from pollama.template.output import OutputParser, ParsedOutput

TOOLS = [{"type": "function", "function": {"name": "weather"}}]
OUTPUT = '<think>Let me look.</think>Sure. <tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'


def parse(parser: OutputParser, pieces: list[str]) -> ParsedOutput:
    whole = ParsedOutput()
    for part in [parser.add(p) for p in pieces] + [parser.finish()]:
        whole.content += part.content
        whole.thinking += part.thinking
        whole.tool_calls += part.tool_calls
    return whole


def calls(out: ParsedOutput) -> list[tuple[str, dict[str, object]]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in out.tool_calls]


def test_thinking_and_tool_calls_whatever_the_cuts() -> None:
    for size in (1, 3, 7, len(OUTPUT)):
        parser = OutputParser(think=True, thinking_tags=("<think>", "</think>"), tool_tag="<tool_call>", tools=TOOLS)
        out = parse(parser, [OUTPUT[i : i + size] for i in range(0, len(OUTPUT), size)])
        assert (out.thinking, out.content, calls(out)) == ("Let me look.", "Sure. ", [("weather", {"city": "Oslo"})])


def test_each_parser_runs_only_when_asked_for() -> None:
    no_think = parse(OutputParser(think=False, thinking_tags=("<think>", "</think>")), [OUTPUT])
    assert (no_think.thinking, no_think.content, no_think.tool_calls) == ("", OUTPUT, [])
    no_tools = parse(OutputParser(think=True, thinking_tags=("<think>", "</think>"), tool_tag="<tool_call>"), [OUTPUT])
    assert no_tools.thinking == "Let me look." and no_tools.content.startswith("Sure. <tool_call>{")
    assert not no_tools.tool_calls


def test_prefilled_opening_tag_starts_inside_the_thinking() -> None:
    parser = OutputParser(prompt="<|assistant|><think>\n", think=True, thinking_tags=("<think>", "</think>"))
    out = parse(parser, ["Hmm.", "</think>", "Done."])
    assert (out.thinking, out.content) == ("Hmm.", "Done.")


def test_held_back_text_comes_out_at_the_end() -> None:
    parser = OutputParser(tool_tag="<tool_call>", tools=TOOLS)
    assert parser.add("partial <tool") == ParsedOutput(content="partial ")  # "<tool" may start the tag
    assert not parser.add("")
    assert parser.finish() == ParsedOutput(content="<tool")
