from bindspace.datasets.spoken_digits.builder import main

main()
