"""The GBNF grammar behind ``format: "json"``: any JSON object (spec §9.3).

A JSON-schema ``format`` is converted to a grammar inside the runner by llama.cpp's own converter
(``llama_cpp.llama_grammar.json_schema_to_gbnf``).
"""

JSON_GRAMMAR = r"""
root   ::= "{" ws ( member ("," ws member)* )? "}"
member ::= string ":" ws value
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::= "{" ws ( member ("," ws member)* )? "}" ws

array  ::= "[" ws ( value ("," ws value)* )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]*)) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws

# Bounded whitespace, and none after the top-level object: once it closes, only end-of-text is left.
ws ::= | " " | "\n" [ \t]{0,20}
"""
