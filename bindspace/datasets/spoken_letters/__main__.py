from bindspace.datasets.spoken_letters.builder import main

main()
