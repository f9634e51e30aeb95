from masksfm.cli import main

main()
