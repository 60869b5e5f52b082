"""YAML nodes made into values, with the work bounded: aliases counted before anything is built.

A node reached through an alias is the anchor's node object again, so a few
hundred bytes of nested aliases stand for billions of values to anything that
walks the result as a tree. `check_aliases` counts the expanded size over the
node graph (each node once) and refuses past MAX_ALIAS_EXPANSION, or an alias
inside its own anchor; `construct` then builds the value.
"""

from __future__ import annotations

from typing import Any

import yaml

# How many values aliases may add to a file beyond those written in it: sharing an action
# list between rules is a few hundred; a YAML bomb is billions.
MAX_ALIAS_EXPANSION = 100_000


class Refused(yaml.constructor.ConstructorError):
    """Valid YAML this loader will not build; its message is complete as it stands."""


def check_aliases(root: yaml.Node) -> None:
    """Refuse nodes whose aliases expand past MAX_ALIAS_EXPANSION values, or into themselves.

    A node reached through an alias is the anchor's node object again, so sizes are
    counted once per node (memoised) over the graph, never by walking the tree.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the node being counted and its ancestors
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        key = id(node)
        children = _children(node)
        if counted:
            open_nodes.discard(key)
            size = sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if size > len(sizes) + MAX_ALIAS_EXPANSION:
                raise Refused(None, None, _ALIAS_BOMB, node.start_mark)
        elif key in open_nodes:
            raise Refused(None, None, _ALIAS_LOOP, node.start_mark)
        elif key not in sizes:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


_ALIAS_BOMB = (
    f"aliases expand this file to more than {MAX_ALIAS_EXPANSION:,} values beyond those written "
    "(a value reached through an alias counts each time); use fewer anchors and aliases"
)
_ALIAS_LOOP = "an alias here refers to itself (its anchor encloses it), which never ends; remove the alias"


_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"


def construct(loader: yaml.constructor.BaseConstructor, root: yaml.Node) -> Any:
    """The value of `root`: texts, lists and mappings built here, anything else by PyYAML.

    The same values as `loader.construct_document` (a property test holds them equal),
    built in a third of the time: PyYAML's generic construction was most of loading a
    rule folder once templates were shared.
    """
    built: dict[int, Any] = {}

    def build(node: yaml.Node) -> Any:
        found = built.get(id(node), built)
        if found is not built:
            return found
        value: Any
        if node.tag == _STR and isinstance(node, yaml.ScalarNode):
            value = node.value
        elif node.tag == _SEQ and isinstance(node, yaml.SequenceNode):
            value = built[id(node)] = []
            value.extend(build(child) for child in node.value)
        elif (
            node.tag == _MAP
            and isinstance(node, yaml.MappingNode)
            and all(isinstance(key, yaml.ScalarNode) and key.tag != _MERGE for key, _ in node.value)
        ):
            value = built[id(node)] = {}
            for key_node, value_node in node.value:
                value[build(key_node)] = build(value_node)
        else:  # numbers, booleans, null, merge keys, explicit tags, and the errors they raise
            value = loader.construct_object(node, deep=True)
        built[id(node)] = value
        return value

    return build(root)
