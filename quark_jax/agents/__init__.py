"""Agents: a tool-calling loop on the compiled generate functions, tools, a router and specialised agents."""
