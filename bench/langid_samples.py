"""Real sentences in twelve languages, written for the language-identification bench and tests.

Each language has a few everyday sentences (news, weather, instructions, a recipe); `SHORT`
holds one short phrase per language (a few words), where detectors differ most. ISO 639-1 codes.
"""

from __future__ import annotations

SAMPLES: dict[str, list[str]] = {
    "en": [
        "The city council voted on Tuesday to extend the bus lines to the new hospital before winter.",
        "Preheat the oven, then mix the flour with the butter until it looks like coarse breadcrumbs.",
        "Heavy rain is expected across the north of the country tomorrow, with strong winds along the coast.",
        "If the program does not start, check that the configuration file exists and can be read.",
        "She spent the summer reading old letters her grandmother had kept in a box under the stairs.",
    ],
    "fr": [
        "Le conseil municipal a voté mardi le prolongement des lignes de bus jusqu'au nouvel hôpital.",
        "Préchauffez le four, puis mélangez la farine avec le beurre jusqu'à obtenir une texture sableuse.",
        "De fortes pluies sont attendues demain dans le nord du pays, avec des rafales de vent sur la côte.",
        "Si le programme ne démarre pas, vérifiez que le fichier de configuration existe et peut être lu.",
        "Elle a passé l'été à relire les vieilles lettres que sa grand-mère gardait dans une boîte.",
    ],
    "de": [
        "Der Stadtrat hat am Dienstag beschlossen, die Buslinien bis zum neuen Krankenhaus zu verlängern.",
        "Heizen Sie den Ofen vor und verkneten Sie das Mehl mit der Butter, bis feine Krümel entstehen.",
        "Morgen wird im Norden des Landes starker Regen erwartet, an der Küste auch stürmischer Wind.",
        "Wenn das Programm nicht startet, prüfen Sie, ob die Konfigurationsdatei existiert und lesbar ist.",
        "Sie verbrachte den Sommer damit, alte Briefe zu lesen, die ihre Großmutter aufbewahrt hatte.",
    ],
    "es": [
        "El ayuntamiento aprobó el martes ampliar las líneas de autobús hasta el nuevo hospital.",
        "Precaliente el horno y mezcle la harina con la mantequilla hasta que parezca pan rallado.",
        "Mañana se esperan lluvias intensas en el norte del país, con fuertes vientos en la costa.",
        "Si el programa no arranca, compruebe que el archivo de configuración existe y se puede leer.",
        "Pasó el verano leyendo las cartas antiguas que su abuela guardaba en una caja bajo la escalera.",
    ],
    "it": [
        "Martedì il consiglio comunale ha votato per prolungare le linee degli autobus fino al nuovo ospedale.",
        "Scaldate il forno e impastate la farina con il burro finché il composto non diventa sabbioso.",
        "Domani sono attese forti piogge nel nord del paese, con raffiche di vento lungo la costa.",
        "Se il programma non si avvia, controllate che il file di configurazione esista e sia leggibile.",
        "Ha passato l'estate a leggere le vecchie lettere che la nonna teneva in una scatola sotto le scale.",
    ],
    "pt": [
        "A câmara municipal votou na terça-feira o prolongamento das linhas de autocarro até ao novo hospital.",
        "Pré-aqueça o forno e misture a farinha com a manteiga até obter uma textura de areia grossa.",
        "Amanhã são esperadas chuvas fortes no norte do país, com ventos intensos no litoral.",
        "Se o programa não iniciar, verifique se o arquivo de configuração existe e pode ser lido.",
        "Ela passou o verão lendo as cartas antigas que a avó guardava numa caixa debaixo da escada.",
    ],
    "nl": [
        "De gemeenteraad heeft dinsdag besloten de buslijnen door te trekken naar het nieuwe ziekenhuis.",
        "Verwarm de oven voor en meng de bloem met de boter tot het op grove kruimels lijkt.",
        "Morgen wordt in het noorden van het land veel regen verwacht, met harde wind langs de kust.",
        "Als het programma niet start, controleer dan of het configuratiebestand bestaat en leesbaar is.",
        "Ze bracht de zomer door met het lezen van oude brieven die haar grootmoeder had bewaard.",
    ],
    "pl": [
        "Rada miasta zdecydowała we wtorek o przedłużeniu linii autobusowych do nowego szpitala.",
        "Rozgrzej piekarnik, a następnie wymieszaj mąkę z masłem, aż powstanie kruszonka.",
        "Jutro na północy kraju spodziewane są intensywne opady deszczu i silny wiatr na wybrzeżu.",
        "Jeśli program się nie uruchamia, sprawdź, czy plik konfiguracyjny istnieje i da się go odczytać.",
        "Spędziła lato na czytaniu starych listów, które babcia trzymała w pudełku pod schodami.",
    ],
    "cs": [
        "Městská rada v úterý rozhodla o prodloužení autobusových linek až k nové nemocnici.",
        "Předehřejte troubu a smíchejte mouku s máslem, dokud nevznikne hrubá drobenka.",
        "Zítra se na severu země očekává vydatný déšť a na pobřeží silný vítr.",
        "Pokud se program nespustí, zkontrolujte, zda konfigurační soubor existuje a dá se přečíst.",
        "Celé léto četla staré dopisy, které babička schovávala v krabici pod schody.",
    ],
    "sv": [
        "Kommunfullmäktige beslutade i tisdags att förlänga busslinjerna till det nya sjukhuset.",
        "Sätt ugnen på och blanda mjölet med smöret tills det liknar grova smulor.",
        "I morgon väntas kraftigt regn i norra delen av landet och hård vind längs kusten.",
        "Om programmet inte startar, kontrollera att konfigurationsfilen finns och går att läsa.",
        "Hon tillbringade sommaren med att läsa gamla brev som hennes mormor sparat i en låda.",
    ],
    "ru": [
        "Во вторник городской совет проголосовал за продление автобусных маршрутов до новой больницы.",
        "Разогрейте духовку и разотрите муку со сливочным маслом до состояния крупной крошки.",
        "Завтра на севере страны ожидаются сильные дожди, а на побережье штормовой ветер.",
        "Если программа не запускается, проверьте, существует ли файл настроек и доступен ли он для чтения.",
        "Всё лето она перечитывала старые письма, которые бабушка хранила в коробке под лестницей.",
    ],
    "el": [
        "Το δημοτικό συμβούλιο αποφάσισε την Τρίτη την επέκταση των γραμμών λεωφορείων έως το νέο νοσοκομείο.",
        "Προθερμάνετε τον φούρνο και ανακατέψτε το αλεύρι με το βούτυρο μέχρι να γίνει σαν τρίμμα.",
        "Αύριο αναμένονται ισχυρές βροχές στον βορρά της χώρας και δυνατοί άνεμοι στις ακτές.",
        "Αν το πρόγραμμα δεν ξεκινά, ελέγξτε ότι το αρχείο ρυθμίσεων υπάρχει και μπορεί να διαβαστεί.",
        "Πέρασε το καλοκαίρι διαβάζοντας τα παλιά γράμματα που φύλαγε η γιαγιά της σε ένα κουτί.",
    ],
}

SHORT: dict[str, str] = {
    "en": "the weather is nice today",
    "fr": "il fait beau aujourd'hui",
    "de": "das Wetter ist heute schön",
    "es": "hoy hace buen tiempo",
    "it": "oggi il tempo è bello",
    "pt": "hoje o tempo está bom",
    "nl": "het weer is mooi vandaag",
    "pl": "dzisiaj jest ładna pogoda",
    "cs": "dnes je hezké počasí",
    "sv": "vädret är fint idag",
    "ru": "сегодня хорошая погода",
    "el": "σήμερα έχει ωραίο καιρό",
}
