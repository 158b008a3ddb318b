"""Where readings come from. Each source type is one file here, registered under the
``edge_agent.sources`` entry point group exactly like an installed one (agent/api.py has the
contract); ``agent.runtime.source_runner`` runs them.

Nothing is imported here: ``agent.config`` imports the payload mapping's config model from this
package, so loading the package must not load ``agent.config``."""
