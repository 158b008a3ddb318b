from agent.daemon import main

main()
