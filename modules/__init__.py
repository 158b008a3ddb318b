"""The built-in processing modules, registered through the ``edge_agent.modules`` entry points."""
