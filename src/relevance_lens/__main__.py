from relevance_lens.cli import main

main()
