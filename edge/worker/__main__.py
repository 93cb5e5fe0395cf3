from edge.worker.main import main

main()
